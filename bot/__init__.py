"""Slack, the scheduler and the command line around the runbook engine."""
