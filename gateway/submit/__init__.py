"""From stored readings to the chain:

intervals   pure: cumulative counters -> interval submissions the oracle cannot refuse (its checks mirrored)
submitter   the loop: plan, reconcile with the chain, judge FutureReading by the cluster's clock, submit through
            gateway.oracle.OracleClient, record results in the outbox
"""
