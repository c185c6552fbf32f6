"""Stand-ins for outside systems, not part of the service: the simulated bank (``bank``), which
the mock gateway loads in process, and the EBS simulator (``ebs``), run as its own process."""
