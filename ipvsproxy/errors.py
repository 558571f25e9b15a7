"""The proxy's own error hierarchy; library exceptions are translated at the adapters."""

from __future__ import annotations


class IpvsProxyError(Exception):
    """Base of every error the proxy raises on purpose."""


class InputError(IpvsProxyError):
    """A file given by the user cannot be read or parsed (the CLI exits 2)."""


class InvalidObject(IpvsProxyError):
    """A Kubernetes object that cannot be programmed; it is skipped with a warning."""

    def __init__(self, kind: str, key: str, reason: str) -> None:
        super().__init__(f"{kind} {key}: {reason}")
        self.kind = kind
        self.key = key
        self.reason = reason


class ConfigError(IpvsProxyError):
    """The proxy configuration is invalid."""


class KernelError(IpvsProxyError):
    """A kernel subsystem refused an operation or could not be reached."""

    def __init__(self, message: str, *, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class SandboxError(IpvsProxyError):
    """The user-mode-linux test kernel could not be started or did not finish."""


class ApiError(IpvsProxyError):
    """The Kubernetes API server answered with an error status, or could not be reached.

    status is the HTTP status (or the code of a watch ERROR event); 0 when no answer came.
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
