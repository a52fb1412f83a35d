-- The directory: organizations, users, flows, memberships, tokens, sources,
-- invitations, per-user private conversation state and bridge settings.
CREATE TABLE organizations (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    parameterized_name TEXT NOT NULL UNIQUE,
    user_limit INTEGER NOT NULL DEFAULT 0);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL,
    nick TEXT NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    api_token TEXT NOT NULL UNIQUE,
    avatar TEXT NOT NULL DEFAULT '',
    website TEXT NOT NULL DEFAULT '',
    disabled BOOLEAN NOT NULL DEFAULT FALSE);
CREATE UNIQUE INDEX users_email ON users (lower(email));

CREATE TABLE org_members (
    org_id BIGINT NOT NULL REFERENCES organizations(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (org_id, user_id));
CREATE INDEX org_members_user ON org_members (user_id);

CREATE TABLE flows (
    id TEXT PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    parameterized_name TEXT NOT NULL,
    access_mode TEXT NOT NULL,
    api_token TEXT NOT NULL UNIQUE,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    description TEXT NOT NULL DEFAULT '',
    UNIQUE (organization_id, parameterized_name));

CREATE TABLE flow_members (
    flow_id TEXT NOT NULL REFERENCES flows(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    status TEXT,
    last_activity BIGINT NOT NULL DEFAULT 0,
    open BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (flow_id, user_id));
CREATE INDEX flow_members_user ON flow_members (user_id);

CREATE TABLE private_state (
    user_id BIGINT NOT NULL,
    other_id BIGINT NOT NULL,
    open BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, other_id));

CREATE TABLE sources (
    id BIGSERIAL PRIMARY KEY,
    flow_id TEXT NOT NULL,
    name TEXT NOT NULL,
    flow_token TEXT NOT NULL UNIQUE,
    creator_id BIGINT,
    external_url TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    configuration_url TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE);
CREATE INDEX sources_flow ON sources (flow_id);

CREATE TABLE invitations (
    id BIGSERIAL PRIMARY KEY,
    flow_id TEXT NOT NULL,
    email TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    message TEXT NOT NULL DEFAULT '');
CREATE UNIQUE INDEX invitations_flow_email ON invitations (flow_id, lower(email));

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL);
