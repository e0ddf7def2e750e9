"""Evaluation components: estimators of prefix values, their scoring against Monte Carlo labels
(metrics, noise ceiling, step verification), soft values of the policy's logits, analyses and the report.
"""
