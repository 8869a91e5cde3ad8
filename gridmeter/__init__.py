"""gridmeter: one console command for the agent, gateway, provisioning and the local chain."""

__all__: list[str] = []
