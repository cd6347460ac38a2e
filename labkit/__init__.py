"""labkit: the code behind the course. One module per idea, in course order.

Chapter 1  n-gram language models      corpus (the offline corpus), ngram, ngram_explorer, checks.ngram
Platform   the real models, offline    models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)
           the course pipeline         course.manifest (book.yml), course.labs, course.book

A module never imports a later chapter's module.
"""
__version__ = "0.1.0"
