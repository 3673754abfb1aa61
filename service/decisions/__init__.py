"""From score to decision: answer-or-abstain thresholds, shadow scoring, what to label next."""
