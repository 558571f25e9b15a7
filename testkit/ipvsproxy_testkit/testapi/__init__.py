"""A small Kubernetes API server for tests, the demo and benchmarks.

Serves core/v1 Services, Nodes and Namespaces and discovery.k8s.io/v1 EndpointSlices over
plain HTTP, by default on 127.0.0.1, so that the real `kubernetes` client and the real
`kubectl` can be pointed at it unchanged:

- one global resourceVersion counts every write; objects carry it with a uid and a
  creationTimestamp;
- list with `limit` / `continue` (a continued list shows the first page's snapshot, 410
  Expired once the event log has been compacted past it), `labelSelector` (`=`, `==`,
  `!=`, `in`, `notin`, `key`, `!key`), `fieldSelector` (`=`, `!=` on any field path),
  `resourceVersion` as the real API reads it without `resourceVersionMatch` (absent: the
  latest; "0": from the cache, limit ignored, as through Kubernetes 1.32; N with a limit:
  exactly at N, 410 once compacted; N without: not older than N);
- watch (`watch=1`) as chunked newline-delimited JSON events, ADDED / MODIFIED / DELETED /
  BOOKMARK / ERROR, from a resourceVersion (replayed from a bounded event log; an older one
  gets an ERROR event with a 410 Expired Status), or without one (the current objects as
  ADDED first), `allowWatchBookmarks`, `sendInitialEvents`, `timeoutSeconds`; objects
  entering or leaving a watch's selector arrive as ADDED or DELETED;
- create, replace (optimistic concurrency on metadata.resourceVersion), delete (with
  preconditions), PATCH as JSON patch, JSON merge patch and strategic merge patch (with the
  merge keys of these kinds' lists, see `patch.py`), the `status` subresource;
- Service defaulting the proxy relies on: type, ports' protocol and targetPort, traffic
  policies, cluster IPs (10.96.0.0/16, fd00:10:96::/112) and node ports allocated, and kept
  on update when the new object leaves them out;
- discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/discovery.k8s.io[/v1]`,
  `/version`), just enough OpenAPI v3 for kubectl to leave validation to the server (see
  `openapi.py`), Table answers with kubectl's columns for `kubectl get` (see `tables.py`),
  and `/healthz`, `/livez`, `/readyz`;
- fault injection, from Python (`TestAPIServer.faults`, `.go_away()`, `.cut_watches()`,
  `.store.compact()`) or over HTTP under `/testapi/` (see `control.py`).

It does NOT implement: authentication or authorization (any token is accepted and
ignored), TLS, admission (namespaces come into being with their first object), validation
beyond names, labels, cluster IPs and node ports, defaulting beyond the fields listed
above, field managers and server-side apply, `fieldValidation` (accepted; unknown fields
are kept), finalizers and graceful deletion, owner references and garbage collection, dry
run, protobuf or CBOR (such bodies get 415, so kubectl's typed generators such as
`kubectl create namespace` fail while `kubectl create -f` works), OpenAPI schemas,
aggregated discovery (kubectl falls back to the plain documents), `resourceVersionMatch`,
deletecollection, resources other than the four above, and watch cache semantics beyond
`resourceVersion=0` lists.
"""

from ipvsproxy_testkit.testapi.faults import Faults
from ipvsproxy_testkit.testapi.server import TestAPIServer
from ipvsproxy_testkit.testapi.status import ApiError
from ipvsproxy_testkit.testapi.store import Store

__all__ = ["ApiError", "Faults", "Store", "TestAPIServer", "kubeconfig"]


def kubeconfig(url: str, *, namespace: str = "default") -> str:
    """A kubeconfig for kubectl and the kubernetes client: plain HTTP, no credentials."""
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: testapi\n  cluster:\n    server: {url}\n"
        "users:\n"
        "- name: testapi\n  user: {}\n"
        "contexts:\n"
        f"- name: testapi\n  context:\n    cluster: testapi\n    user: testapi\n"
        f"    namespace: {namespace}\n"
        "current-context: testapi\n"
    )
