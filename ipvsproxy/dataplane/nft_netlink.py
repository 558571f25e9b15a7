"""Reading the nftables backend's set elements over nf_tables netlink, without `nft list`.

`nft list table` spends most of its time fetching and printing the elements; the chains,
whose number never depends on Services, come cheaply from the terse listing (`nft -t`).
The elements are dumped here, one GETSETELEM dump per set; ``nft_codec`` decodes them.
"""

from __future__ import annotations

import errno
from functools import partial

from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.nft_rules import NftSet
from ipvsproxy.dataplane.netlink import NetlinkSocket
from ipvsproxy.dataplane.nft_codec import (
    NETLINK_NETFILTER,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSETELEM,
    chains_fingerprint,
    decode_elements,
    encode_chains_request,
    encode_elements_request,
    encode_rules_request,
    message_type,
)
from ipvsproxy.errors import KernelError


class NftSetSocket(NetlinkSocket):
    """An nfnetlink socket for nf_tables, in the current network namespace."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        super().__init__(
            protocol=NETLINK_NETFILTER, name="nf_tables", timeout=timeout, buffer_bytes=1024 * 1024
        )

    def elements(self, family: IPFamily, table: str, nft_set: NftSet) -> frozenset[str] | None:
        """The set's elements in ipset syntax; None when the table or set does not exist.
        UnsupportedNftSet when an element cannot be printed exactly as `nft list` does."""
        request = partial(encode_elements_request, family, table, nft_set.name)
        try:
            payloads = self._dump(request, reply_type=message_type(NFT_MSG_NEWSETELEM))
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return decode_elements(payloads, nft_set, family)

    def chains_fingerprint(self, family: IPFamily, table: str) -> bytes:
        """A digest of the table's chains and rules (nft_codec.chains_fingerprint): two
        small dumps, which tell whether the chains read last are still the kernel's."""
        chains = self._dump(
            partial(encode_chains_request, family), reply_type=message_type(NFT_MSG_NEWCHAIN)
        )
        try:
            rules = self._dump(
                partial(encode_rules_request, family, table),
                reply_type=message_type(NFT_MSG_NEWRULE),
            )
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                raise
            rules = []
        return chains_fingerprint(chains, rules, table)
