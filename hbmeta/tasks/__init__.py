"""Task batches and their masks, task families, fixed task sets and sharding over devices."""
