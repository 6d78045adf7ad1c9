"""The foundation under train, eval, serve and convert: mesh and sharding rules, abstract sharded trees,
checkpoint I/O, tokenizers, trainable-state strategies and `ModelDir`. Imports no higher layer."""
