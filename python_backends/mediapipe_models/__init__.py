"""MediaPipe's face detector (BlazeFace), Face Mesh and body pose (BlazePose), run from the .tflite files that the
mediapipe 0.10.14 wheel ships (Apache-2.0), without mediapipe's runtime (it pins protobuf<5, which clashes with
tritonclient): files.py extracts them, tflite.py runs them with ai-edge-litert, the rest is MediaPipe's own
pre- and post-processing (anchors, box decoding, weighted NMS, rotated crops) written out in numpy.
"""
