"""The web app's logic, by job, without Gradio (``app.py`` is the page): options, the shared
models, images, sessions and what they keep, compute slots, served files and the page's text."""
