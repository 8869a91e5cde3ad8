"""The GridTokenX oracle program's interface, in one place: what the gateway's chain client (gateway/oracle/)
and the local chain (localchain/) both speak. It imports neither of them.

layout        bytes: discriminators, error codes, instruction data, account decoders (no solders)
addresses     program-derived addresses (oracle_data, MeterState)
instructions  instructions with their account lists: submit_meter_reading and the admin instructions
"""
