"""The built-in plugins: strategies and layouts, registered through the same hooks as a third party's."""
