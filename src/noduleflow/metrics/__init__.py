"""Evaluation metrics: classification (P/R/F1, ROC AUC) and the LUNA16 FROC beside it."""
