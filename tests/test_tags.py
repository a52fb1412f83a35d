"""Tag rules of the API spec, section 6 (flowtwist.tags)."""
import pytest

from flowtwist import tags

MEMBERS = [(16, "Marty"), (17, "doc"), (18, "jennifer.p"), (19, "biff-t")]


def build(text, params=(), members=MEMBERS):
    return tags.build_tags(text, list(params), members)


def test_spec_example():
    got = build("@Marty the #bug is back, see http://x.io", ["#space-time"])
    assert got == [":user:16", ":unread:16", ":url", "bug", "space-time"]


def test_leading_hash_is_optional_and_dropped():
    assert build(None, ["#cool", "awesome"]) == ["cool", "awesome"]


def test_param_forms_are_equivalent_case_insensitively():
    a = build(None, tags.split_param(["@Marty", "#cool", "awesome"]))
    b = build(None, tags.split_param("#awesome,cool,@marty"))
    assert sorted(t.lower() for t in a) == sorted(t.lower() for t in b)
    assert ":user:16" in a and ":user:16" in b


def test_hashtags_keep_spelling_duplicates_dropped_first_order_kept():
    assert build("#Deploy then #deploy and #Later", ["DEPLOY", "x"]) == ["Deploy", "Later", "x"]


@pytest.mark.parametrize("text, expected", [
    ("#16 is valid", ["16"]),
    ("#café ok", ["café"]),
    ("#日本語 ok", ["日本語"]),
    ("#snake_case and #kebab-case", ["snake_case", "kebab-case"]),
    ("end of sentence #done.", ["done"]),
    ("(#paren)", ["paren"]),
    ("no#tag inside a word", []),
    ("## not a tag", []),
    ("a lone # sign", []),
])
def test_hashtag_syntax(text, expected):
    assert build(text, members=[]) == expected


def test_mentions_match_nicks_case_insensitively():
    assert build("hey @DOC") == [":user:17", ":unread:17"]


def test_mention_may_contain_dots_and_dashes_but_not_end_with_a_dot():
    assert build("ping @jennifer.p.") == [":user:18", ":unread:18"]
    assert build("ping @biff-t, now") == [":user:19", ":unread:19"]


def test_unknown_and_disabled_nicks_are_not_tagged():
    # the caller passes only enabled members; a nick outside them is plain text
    assert build("@nobody hi") == []
    assert build("@doc hi", members=[(16, "Marty")]) == []


def test_email_address_is_not_a_mention():
    assert build("write to marty@doc.com", members=[(17, "doc")]) == []


@pytest.mark.parametrize("word", ["everyone", "everybody", "all", "anyone", "anybody",
                                  "Everyone"])
def test_everyone_tags_every_member_unread(word):
    got = build(f"@{word} standup")
    assert got == [":user:everyone"] + [f":unread:{uid}" for uid, _ in MEMBERS]


def test_team_mention():
    assert build("@team look") == [":user:team"]


def test_mention_as_param_tag():
    assert build("hello", ["@marty"]) == [":user:16", ":unread:16"]


def test_highlight_when_nick_appears_without_at():
    assert build("marty, are you there?") == [":highlight:16"]
    assert build("thanks doc.") == [":highlight:17"]
    # a mention is not also a highlight
    assert build("@marty marty") == [":user:16", ":unread:16"]


@pytest.mark.parametrize("text", ["see https://example.com/a?b=c", "ftp://files.example.org",
                                  "www.example.com is up"])
def test_url_meta_tag(text):
    assert ":url" in build(text, members=[])


def test_no_url_tag_without_url():
    assert ":url" not in build("plain words. end.", members=[])


def test_url_fragments_and_paths_are_not_tags():
    got = build("see http://x.io/page/#anchor and http://x.io/@doc", members=[(17, "doc")])
    assert got == [":url"]


def test_split_param():
    assert tags.split_param(None) == []
    assert tags.split_param("") == []
    assert tags.split_param(" a, b ,,c ") == ["a", "b", "c"]
    assert tags.split_param(["a", " b ", ""]) == ["a", "b"]
    with pytest.raises(ValueError):
        tags.split_param({"a": 1})
    with pytest.raises(ValueError):
        tags.split_param(5)


def test_dedupe_is_case_insensitive_and_keeps_first():
    assert tags.dedupe(["A", "b", "a", "B", "c", ""]) == ["A", "b", "c"]


def test_normalise_filter():
    assert tags.normalise_filter(["#bug", "@Marty", ":user:17", "@ghost", "plain"], MEMBERS) \
        == ["bug", ":user:16", ":user:17", "@ghost", "plain"]
