"""Load tests of a BlueWren node with Locust: a blocking client, users, thresholds."""
