"""uniserve test suites, grouped like the code; shared helpers in `tests.helpers`."""
