"""What a simulated WinRM node is configured with: a default Windows Server 2022 node.

The values are those `winrm get winrm/config` shows on a node nobody has
tuned. Each names the Microsoft document it comes from; where Microsoft's
pages disagree (the "Installation and configuration for Windows Remote
Management" page still lists WinRM 2.0's 150 KB, 180000 ms and 5 shells),
the value is the one MS-WSMV and the PowerShell reference give for current
Windows, which is also what a Server 2022 node reports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WinRMConfig:
    """The service, WinRS and protocol settings the simulated node enforces."""

    # MS-WSMV 2.2.4.42 WinrsType: MaxShellsPerUser default 30. Windows Server 2022
    # answers the 31st concurrent shell of one user with a wsman:QuotaLimit fault.
    max_shells_per_user: int = 30
    # MS-WSMV 2.2.4.10 ConfigType: MaxEnvelopeSizekb "SHOULD be 500"; it also limits
    # the size of the client's request packets (a larger one gets HTTP 413).
    max_envelope_size_kb: int = 500
    # MS-WSMV 2.2.4.10: MaxTimeoutms default 60000; 3.1.4.1.6: an OperationTimeout
    # above it (or none) is cut to it.
    max_timeout_ms: int = 60000
    # PowerShell-Docs reference/5.1/Microsoft.PowerShell.Core/New-PSSessionOption.md:
    # "The default value of the WSMan shell idle time-out
    # (WSMan:\<ComputerName>\Shell\IdleTimeout) is 7200000 milliseconds (2 hours)."
    # Windows ignores values under 60000 ms; the simulator takes any (tests use short ones).
    idle_timeout_ms: int = 7_200_000
    # "Installation and configuration for Windows Remote Management", WinRM service
    # default configuration settings: Basic "The default is False".
    allow_basic: bool = False
    # Same page: service AllowUnencrypted "The default is False" (over HTTP every
    # message must be encrypted: NTLM/Kerberos/CredSSP message encryption).
    allow_unencrypted: bool = False

    @property
    def max_envelope_bytes(self) -> int:
        return self.max_envelope_size_kb * 1024

    @property
    def idle_timeout(self) -> float:
        """IdleTimeout in seconds."""
        return self.idle_timeout_ms / 1000

    @property
    def max_timeout(self) -> float:
        """MaxTimeoutms in seconds."""
        return self.max_timeout_ms / 1000
