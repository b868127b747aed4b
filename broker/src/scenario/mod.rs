//! Multi-app scenarios: files that declare tenants, modules, regions, grants and workload phases, and
//! the runner that executes them once per mode and reports what each mode cost.
