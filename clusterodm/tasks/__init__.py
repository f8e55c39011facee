"""Tasks: intake, task table, routes, dispatch, options rules."""
