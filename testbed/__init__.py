"""testbed: the hardware-free bench used by tests, bench/ and the demo: simulated meters, virtual RS-485
links (socat), a throwaway mosquitto broker. Real components, no mocks."""
