"""Local mode (`berth up`): the planner's output carried out with local processes and a router."""
