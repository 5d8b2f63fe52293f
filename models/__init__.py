"""dsqc.models"""
