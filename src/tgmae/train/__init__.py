"""tgmae.train"""
