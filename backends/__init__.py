"""dsqc.backends"""
