"""Tests of the manager's actors."""
