"""Connecting to the API server with the `kubernetes` client package.

`connect(settings)` chooses the connection as kube-proxy's createClient does:
- `--kubeconfig FILE` (or clientConnection.kubeconfig): that file's current context;
  `--master URL` then overrides its server. A user's `tokenFile` (kubeadm's kube-proxy
  kubeconfig names the pod's service account token) is re-read as in-cluster;
- `--master URL` alone: that server, with no credentials;
- neither: in-cluster, from KUBERNETES_SERVICE_HOST/PORT, the service account's CA and
  token. Bound service-account tokens expire (kubelet rewrites the file about hourly), so
  the token file is checked before every request and read again when it changed.

`KubernetesTransport` is the reflectors' `Transport`: GET requests through the client's
ApiClient (TLS, credentials, connection pool), answers left unread
(`_preload_content=False`), JSON only. Errors of the client, urllib3 and sockets become
`ApiError`. The client's model classes are never built.

This module imports `kubernetes` when a connection is made, not when it is imported: the
package takes about half a second to load.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import yaml
from loguru import logger

from ipvsproxy.errors import ApiError, ConfigError
from ipvsproxy.k8s.ratelimit import TokenBucket
from ipvsproxy.version import user_agent

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_QPS",
    "ApiConnection",
    "ClientSettings",
    "KubernetesTransport",
    "TokenFile",
    "connect",
]

DEFAULT_QPS: Final = 5.0
DEFAULT_BURST: Final = 10
JSON: Final = "application/json"
PROTOBUF: Final = "application/vnd.kubernetes.protobuf"

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """How to reach the API server (kube-proxy's clientConnection plus `--master`)."""

    kubeconfig: str | None = None
    """A kubeconfig file; None (and no master) means in-cluster configuration."""

    master: str | None = None
    """Server URL; overrides the kubeconfig's server."""

    qps: float = DEFAULT_QPS
    """Requests per second the client allows itself; <= 0 means no limit."""

    burst: int = DEFAULT_BURST
    """Requests allowed at once above qps."""

    content_type: str = JSON
    """Only JSON is spoken; anything else (kube-proxy's default is protobuf) is
    warned about and JSON used."""

    service_account_dir: str = SERVICE_ACCOUNT_DIR
    """Where the in-cluster token and ca.crt are (the default is kubelet's mount)."""


@dataclass(frozen=True, slots=True)
class ApiConnection:
    """A configured client: the transport for reflectors and the shared rate limiter."""

    transport: KubernetesTransport
    limiter: TokenBucket | None
    server: str

    def close(self) -> None:
        self.transport.close()


# Told of every request: method, host (the server's host:port), status code as text
# ("<error>" when no answer came) and the seconds until the answer's headers.
RequestObserver = Callable[[str, str, str, float], None]


def connect(
    settings: ClientSettings,
    *,
    environ: Mapping[str, str] | None = None,
    observe: RequestObserver | None = None,
) -> ApiConnection:
    """A connection as configured; nothing is sent until a reflector asks.

    Raises ConfigError when the kubeconfig, or the in-cluster environment, is unusable.
    """
    from kubernetes import client as k8s_client

    environ = os.environ if environ is None else environ
    wanted = settings.content_type.split(";")[0].strip()
    if wanted == PROTOBUF:
        # kube-proxy's default, in most clusters' files: JSON carries the same objects.
        logger.debug("clientConnection.contentType {type}: JSON is used", type=wanted)
    elif wanted != JSON:
        logger.warning(
            "clientConnection.contentType {type} is not supported; using {json}",
            type=settings.content_type,
            json=JSON,
        )
    configuration = k8s_client.Configuration()
    if settings.kubeconfig:
        _load_kubeconfig(settings.kubeconfig, configuration)
        token_path = _token_file(settings.kubeconfig)
        if token_path is not None:
            _use_token_file(token_path, configuration)
        if settings.master:
            configuration.host = settings.master
    elif settings.master:
        configuration.host = settings.master
    else:
        _load_in_cluster(settings.service_account_dir, environ, configuration)
    # Retrying belongs to the reflectors (jittered backoff, relist on 410): the client's
    # own urllib3 retries would hide failures and wait without being stopped.
    configuration.retries = False
    api_client = k8s_client.ApiClient(configuration)
    # client-go's shape, as kube-proxy sends it: name/version (os/arch) kubernetes/commit.
    api_client.user_agent = user_agent()
    limiter = (
        TokenBucket(qps=settings.qps, burst=max(1, settings.burst)) if settings.qps > 0 else None
    )
    logger.info("API server {server}", server=configuration.host)
    transport = KubernetesTransport(api_client, observe=observe)
    return ApiConnection(transport, limiter, str(configuration.host))


def _load_kubeconfig(path: str, configuration: Any) -> None:
    from kubernetes import config as k8s_config

    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, client_configuration=configuration, persist_config=False
        )
    except (OSError, ValueError, k8s_config.ConfigException, yaml.YAMLError) as exc:
        raise ConfigError(f"kubeconfig {path}: {exc}") from exc
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # YAML that is not a kubeconfig's shape (a list, a string): the loader indexes
        # into it without checking.
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig ({exc!r})") from exc


def _token_file(path: str) -> str | None:
    """The current context's user's tokenFile, relative to the kubeconfig's folder."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
        current = document["current-context"]
        context = next(c["context"] for c in document["contexts"] if c["name"] == current)
        user = next(u["user"] for u in document["users"] if u["name"] == context["user"])
        token_file = user.get("tokenFile")
    except (OSError, yaml.YAMLError, TypeError, KeyError, StopIteration, AttributeError):
        return None  # the client's loader has accepted the file: no tokenFile to re-read
    if not isinstance(token_file, str) or not token_file:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(path)), token_file)


def _load_in_cluster(directory: str, environ: Mapping[str, str], configuration: Any) -> None:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "no --kubeconfig or --master given and not in a cluster:"
            " KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set"
        )
    ca_file = os.path.join(directory, "ca.crt")
    if not os.path.isfile(ca_file):
        raise ConfigError(f"in-cluster configuration: {ca_file} is missing")
    _use_token_file(os.path.join(directory, "token"), configuration)
    host = f"[{host}]" if ":" in host else host
    configuration.host = f"https://{host}:{port}"
    configuration.ssl_ca_cert = ca_file


def _use_token_file(path: str, configuration: Any) -> None:
    token = TokenFile(path)
    token.refresh(configuration)  # fails now, with a clear message, if unreadable
    configuration.refresh_api_key_hook = token.refresh


class TokenFile:
    """A bearer token file, read again whenever it changes.

    The client calls refresh(configuration) before each request (its
    refresh_api_key_hook). A stat is cheap; the file is only read when its inode, size or
    modification time changed, which is how kubelet's atomic rewrite of a projected token
    shows. A rewrite that cannot be read keeps the previous token (logged once).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._identity: tuple[int, int, int] | None = None
        self._token = ""
        self._failed = False
        self._lock = threading.Lock()

    def refresh(self, configuration: Any) -> None:
        with self._lock:
            token = self._current()
        configuration.api_key["BearerToken"] = token
        configuration.api_key_prefix["BearerToken"] = "Bearer"

    def _current(self) -> str:
        try:
            stat = os.stat(self._path)
            identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if identity == self._identity:
                return self._token
            with open(self._path, encoding="utf-8") as stream:
                token = stream.read().strip()
            if not token:
                raise ValueError("the file is empty")
        except (OSError, ValueError) as exc:
            if not self._token:
                raise ConfigError(f"service account token {self._path}: {exc}") from exc
            if not self._failed:
                logger.warning(
                    "cannot read the rotated token {path} ({error}); using the previous one",
                    path=self._path,
                    error=exc,
                )
                self._failed = True
            return self._token
        if self._token and token != self._token:
            logger.debug("service account token {path} rotated", path=self._path)
        self._identity = identity
        self._token = token
        self._failed = False
        return token


class KubernetesTransport:
    """GET requests through a `kubernetes.client.ApiClient`, answers read as they come."""

    def __init__(self, api_client: Any, *, observe: RequestObserver | None = None) -> None:
        self._client = api_client
        self._observe = observe
        self._host = urlsplit(str(api_client.configuration.host)).netloc

    def get(
        self, path: str, query: Sequence[tuple[str, str]], *, timeout: tuple[float, float]
    ) -> _Urllib3Response:
        started = time.monotonic()
        code = "<error>"
        try:
            response = self._get(path, query, timeout=timeout)
            code = str(response.status)
        except ApiError as exc:
            if exc.status:
                code = str(exc.status)
            raise
        finally:
            if self._observe is not None:
                self._observe("GET", self._host, code, time.monotonic() - started)
        if not 200 <= response.status <= 299:
            raise _status_error(path, response)
        return _Urllib3Response(response)

    def _get(
        self, path: str, query: Sequence[tuple[str, str]], *, timeout: tuple[float, float]
    ) -> urllib3.HTTPResponse:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            method, url, headers, body, post = self._client.param_serialize(
                method="GET",
                resource_path=path,
                query_params=list(query),
                header_params={"Accept": JSON},
                auth_settings=["BearerToken"],
            )
            answer = self._client.call_api(
                method,
                url,
                header_params=headers,
                body=body,
                post_params=post,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise ApiError(f"GET {path}: {exc.reason}", status=exc.status or 0) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(f"GET {path}: {exc}") from exc
        response: urllib3.HTTPResponse = answer.response
        return response

    def close(self) -> None:
        self._client.close()


def _status_error(path: str, response: urllib3.HTTPResponse) -> ApiError:
    """The API's Status message when the body holds one, else the HTTP reason."""
    try:
        body = response.read(64 * 1024)
    except Exception:  # the status line says enough
        body = b""
    finally:
        response.release_conn()
    message = response.reason or ""
    try:
        status = json.loads(body)
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            message = status["message"]
    except ValueError:
        pass
    return ApiError(f"GET {path}: {response.status} {message}".rstrip(), status=response.status)


class _Urllib3Response:
    """A urllib3 response as the reflectors' Response."""

    def __init__(self, response: urllib3.HTTPResponse) -> None:
        self._response = response

    def read(self) -> bytes:
        import urllib3

        try:
            return self._response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(f"reading the answer: {exc}") from exc

    def chunks(self) -> Iterator[bytes]:
        import urllib3

        read1: Callable[[int], bytes] = self._response.read1
        try:
            while True:
                # read1 returns what has arrived (at most one HTTP chunk) instead of
                # waiting for a full buffer: watch events must not wait for later ones.
                data = read1(_READ_SIZE)
                if not data:
                    return
                yield data
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise ApiError(f"watch stream: {exc}") from exc

    def shutdown(self) -> None:
        # urllib3 >= 2.3: shuts the socket's read side, so a thread blocked in recv()
        # returns at once; close() from another thread would not wake it.
        try:
            self._response.shutdown()
        except (ValueError, RuntimeError):  # no socket any more: nobody is blocked on it
            pass
        except OSError as exc:
            logger.debug("shutting a watch socket down: {error}", error=exc)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()
