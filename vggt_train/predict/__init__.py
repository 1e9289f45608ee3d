"""`vggt-train predict`: cameras, depth and a point cloud for a folder of images, written as cameras.json, a COLMAP
text model, per-image depth/confidence, points.ply and scene.glb (images.py: inputs and the grid mapping; infer.py:
the forward and the points; writers.py and glb.py: the files; run.py: end to end)."""
