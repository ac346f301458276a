"""optgraph's digits demo as a Flower app: clients train an optgraph artifact on onnxruntime, without torch."""
