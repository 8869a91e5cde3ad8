"""What agent, gateway, provisioning and localchain all need, below all of them (they import base; base imports
none of them, nor protocol): durable file writes, private key-file reading, the systemd notify protocol, the
strict TOML table reader, and shared unit constants."""
