module httpserve

go 1.19
