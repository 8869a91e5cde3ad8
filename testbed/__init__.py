"""testbed: the hardware-free bench used by tests, bench/ and the demo: simulated meters, virtual RS-485
links (socat), a throwaway mosquitto broker. Real components, no mocks.

Modules (imported on demand: several start processes or pull in pymodbus/paho):
    meter          SimulatedMeter: integer Wh counters served through a profile's registers
    simserver      pymodbus server pieces shared by the RTU and TCP benches (faults, framing check, line timing)
    rtu            SocatLink + VirtualRtuBus: several meters behind one socat pty pair
    rtu_process    the same bus in a child process (for tests that SIGKILL the agent)
    tcp            ModbusTcpMeters on a free 127.0.0.1 port
    broker         mosquitto on a free port
    acker          a stand-in gateway that verifies and acks readings
    ports          free_port / wait_port
    child_process  stop_child: terminate, wait with a deadline, kill
    stack          Stack: the whole chain as real processes (agent, mosquitto, gateway, local chain)
    stack_meters   the stack's simulated meters (StackMeter, demo_meters) and their servers (MeterServers)
    stack_config   the config files the stack's processes read
    stack_report   settle and the energy-conservation report of a stack run
"""

__all__: list[str] = []  # nothing at package level: import the module you need (see above)
