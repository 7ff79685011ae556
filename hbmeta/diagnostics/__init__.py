"""ArviZ conversion, NetCDF files, leave-one-task-out LOO and the diagnosis of draws."""
