"""KubeSonar sensor: packets to bidirectional flow records, and publishing them."""
