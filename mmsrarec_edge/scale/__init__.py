"""Scale-out jobs: catalog summarization with the exported summarizer, in one process or on a Ray cluster."""
