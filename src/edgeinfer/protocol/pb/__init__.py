"""Generated gRPC stubs for the Open Inference Protocol (``inference.GRPCInferenceService``).

``open_inference_grpc.proto`` here is the protocol's proto, unchanged. The ``*_pb2*`` modules
are generated from it by ``python -m edgeinfer.protocol.pb.generate`` (grpcio-tools); see
that script for the two edits it makes (a private descriptor pool, a relative import).
Do not edit the generated files by hand.
"""
