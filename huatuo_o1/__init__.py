"""What the HuatuoGPT-o1 stages share: the stage scripts at the repository root import only this package.

See docs/design.md for what lives where, what may import what, and how data flows between stages.
"""
