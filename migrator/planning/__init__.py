"""Before a migration runs: dirty-rate measurement (R8), the convergence
planner that replays QEMU's pre-copy loop, and the predictions built from
both and from what earlier migrations taught."""
