"""The Ray this process uses: joining or starting it, resources, signals, progress, submitting
commands to a cluster; and every use of Ray internals, in one module (rayinternals)."""
