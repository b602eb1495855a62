"""roles/ssh_trust/filter_plugins/known_hosts.py: the known_hosts entries that
ansible.builtin.known_hosts would still write. An entry is skipped only when the file provably
holds it (the exact line, no other line for that name and key type); anything else goes to the
module as before."""

from __future__ import annotations

import base64

from conftest import REPO, load_module

kh = load_module("ssh_trust_known_hosts", REPO / "roles/ssh_trust/filter_plugins/known_hosts.py")

K1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1"
K2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey2"
WANT = [
    {"name": "te1", "key": K1, "label": "te1 ed25519 by name"},
    {"name": "10.0.0.11", "key": K1, "label": "te1 ed25519 by address"},
]


def names(entries: list[dict]) -> list[str]:
    return [e["name"] for e in entries]


def test_entries_in_place_are_skipped() -> None:
    content = f"te1 {K1}\n10.0.0.11 {K1}\nte2 {K2}\n"
    assert kh.known_hosts_pending(WANT, content) == []


def test_slurp_result_is_read_and_a_missing_file_means_everything() -> None:
    content = f"te1 {K1}\n10.0.0.11 {K1}\n"
    slurped = {"content": base64.b64encode(content.encode()).decode(), "encoding": "base64"}
    assert kh.known_hosts_pending(WANT, slurped) == []
    # slurp failed (the file does not exist yet, --check on a fresh master)
    assert names(kh.known_hosts_pending(WANT, {"failed": True, "msg": "not found"})) == [
        "te1",
        "10.0.0.11",
    ]
    assert names(kh.known_hosts_pending(WANT, "")) == ["te1", "10.0.0.11"]


def test_a_new_host_key_or_a_second_line_goes_to_the_module() -> None:
    # te1 was recreated: its line holds the old key
    assert names(kh.known_hosts_pending(WANT, f"te1 {K2}\n10.0.0.11 {K1}\n")) == ["te1"]
    # the right line, but another one for the same name and key type (the module may replace)
    assert names(kh.known_hosts_pending(WANT, f"te1 {K2}\nte1 {K1}\n10.0.0.11 {K1}\n")) == ["te1"]
    # a combined "name,address" line is not the module's line
    assert names(kh.known_hosts_pending(WANT, f"te1,10.0.0.11 {K1}\n")) == ["te1", "10.0.0.11"]


def test_other_key_types_and_comments_do_not_matter() -> None:
    content = f"# comment\n\nte1 ssh-rsa AAAAB3Nza\nte1 {K1} a comment\n10.0.0.11 {K1}\n"
    assert kh.known_hosts_pending(WANT, content) == []


def test_forms_only_ssh_keygen_reads_make_everything_pending() -> None:
    for odd in ("|1|abc=|def= ssh-ed25519 AAAA", "*.example ssh-ed25519 AAAA",
                "@cert-authority * ssh-ed25519 AAAA", "[te1]:2222 ssh-ed25519 AAAA"):  # fmt: skip
        content = f"te1 {K1}\n10.0.0.11 {K1}\n{odd}\n"
        assert names(kh.known_hosts_pending(WANT, content)) == ["te1", "10.0.0.11"], odd
    # a name in upper case: ssh-keygen matches it case-insensitively
    assert names(kh.known_hosts_pending(WANT, f"TE1 {K1}\n10.0.0.11 {K1}\n")) == ["te1"]
