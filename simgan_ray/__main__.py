"""`python -m simgan_ray ...` (the entrypoint of jobs submitted to a cluster) is `simgan-ray ...`."""

from simgan_ray.cli import main

main()
