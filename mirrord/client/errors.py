"""Errors from talking to the agent, each with a message a user can act on."""


class AgentError(Exception):
    """Base class for agent connection problems."""


class AgentUnreachable(AgentError):
    def __init__(self, address: str, timeout: float, detail: str) -> None:
        self.address = address
        super().__init__(f"could not reach the agent at {address} within {timeout:g}s: {detail}")


class AgentAuthFailed(AgentError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the agent refused our token ({detail}); check that the token given to mirrord "
            "matches the agent's MIRRORD_AGENT_TOKEN"
        )


class ProtocolMismatch(AgentError):
    """The agent speaks another major protocol version; the message names both."""


class TargetNotFound(AgentError):
    """The agent could not find (or enter) the target process."""


class AgentLost(AgentError):
    """The connection to the agent broke, or the agent ended the session."""


class AgentStartFailed(AgentError):
    """A local agent process did not come up; the message includes its stderr tail."""
