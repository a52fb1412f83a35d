-- Feed subscriptions of flows (RSS/Atom, Twitter) and their pollers' state.
CREATE TABLE feeds (
    id BIGSERIAL PRIMARY KEY,
    flow_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    creator_id BIGINT,
    created_at BIGINT NOT NULL,
    announced BOOLEAN NOT NULL DEFAULT TRUE,
    removed BOOLEAN NOT NULL DEFAULT FALSE,
    state TEXT NOT NULL DEFAULT '{}',
    UNIQUE (flow_id, kind, target));
