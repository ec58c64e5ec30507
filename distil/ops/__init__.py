"""Operating the engines: the local stack (Ray head, SeaweedFS S3) and its processes, joining a
Ray cluster (``cluster.init_ray``), submitting jobs, and checking object-storage access. Stages
and jobs use these; nothing here imports a stage."""
