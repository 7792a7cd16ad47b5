"""Plotly charts for the app, model cards and reports."""
