"""The author's voice: stylometrics, the voice profile, feedback on variants and drafts."""
