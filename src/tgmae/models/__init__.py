"""tgmae.models"""
