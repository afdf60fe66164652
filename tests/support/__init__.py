"""What the tests share: brokers, farms, processes, stores and the like."""
