"""The web app's logic, by job: uploads, the gate, sessions and the workbench."""
