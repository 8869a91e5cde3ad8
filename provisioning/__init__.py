"""Installer provisioning: `gridmeter provision scan | commission | keygen | register | rotate-key | mqtt-credentials`.

Modules: cli (argument parsing), scan + probe (find/identify meters through agent.bus), commission (reads,
questions and the recorded result) + commission_checks (plausibility, direction, scale and display checks), keygen
(device key via agent.keys), register + enroll + agent_toml (signed registration record, agent config), credentials
(broker account, ACL, TLS), port_lock (refuse while the agent holds the port).
Runs on the Pi with the agent stopped; depends on protocol, firmware_config and agent, never on gateway.
"""

__all__: list[str] = []
