"""Evaluation metrics: classification (P/R/F1, ROC AUC); segmentation and FROC live beside it."""
