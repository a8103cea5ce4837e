"""Prompts as AUTOMATIC1111's users write them: the emphasis syntax and its refusals
(``syntax``), and the token stream cut into the text encoder's chunks (``chunks``). Pure
functions; the encoding runs in ``answer_trt.text.PromptEncoder``."""
